# The user's verbs. kind verbs need docker, kind and kubectl; controlplane verbs need root, Go, kubectl and
# Debian's containerd, runc, containernetworking-plugins and buildah (or docker/podman). `make help` lists them.

CLUSTER  ?= mlvisor
IMAGE    ?= mlvisor:dev
PYTHON   ?= .venv/bin/python
KUBECTL  ?= kubectl
KIND     ?= kind
NS       ?= default
PORT     ?= 8000
TIMEOUT  ?= 300s
KUBECONFIG_E2E ?= $(CURDIR)/build/kind-$(CLUSTER).kubeconfig
NODE     ?= kubelet
CONTROLPLANE = PYTHONPATH=$(CURDIR)/tests $(PYTHON) -m controlplane

.DEFAULT_GOAL := help
.PHONY: help install test bench bench-operator crds controlplane-build controlplane-up controlplane-down kind-up image load deploy demo e2e kind-down

help: ## list the verbs
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-19s %s\n", $$1, $$2}'

install: ## create .venv and install mlvisor with the test extras
	python3 -m venv .venv
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test,bench]'

test: ## the whole test suite, exactly as CI runs it
	.ci/run

bench: ## benchmarks: serving vs MLServer (~15 min), search speedup 1 vs 2 workers (~3 min), sustained load (~12 min)
	$(PYTHON) bench/serving.py --write-readme
	$(PYTHON) bench/trainer_search.py
	$(PYTHON) bench/sustained.py

BENCH_N     ?= 100
BENCH_PLANE ?= $(CURDIR)/build/bench-plane
bench-operator: ## TrainingJobs vs Jobs on a node-less control plane of its own (BENCH_N=100 each, ~4 min): pods/s, create -> first pod, RSS, API calls
	$(CONTROLPLANE) up --node none --state-dir $(BENCH_PLANE)
	KUBECONFIG=$(BENCH_PLANE)/kubeconfig $(PYTHON) bench/operator.py --n $(BENCH_N); \
	  status=$$?; $(CONTROLPLANE) down --state-dir $(BENCH_PLANE); exit $$status

crds: ## regenerate manifests/crds/ from the typed API (mlvisor.api)
	$(PYTHON) -m mlvisor.operator.cli crds --output manifests/crds/

controlplane-build: ## build (cached) the control plane, kubelet and kube-proxy from Go modules, the pause image and mlvisor:dev
	$(CONTROLPLANE) build

controlplane-up: ## start the control plane and a node (kubelet, containerd) running mlvisor:dev (NODE=none: no node)
	$(CONTROLPLANE) up --node $(NODE)

controlplane-down: ## stop the control plane, the node and its containers; remove the node's namespace and cgroups
	$(CONTROLPLANE) down

kind-up: ## create the kind cluster from kind-config.yaml
	$(KIND) get clusters | grep -qx $(CLUSTER) || $(KIND) create cluster --config kind-config.yaml --name $(CLUSTER)

image: ## build mlvisor:dev (operator, trainer, server) from the Dockerfile with docker, podman or buildah
	$(CONTROLPLANE) image

load: ## load the image into the kind cluster
	$(KIND) load docker-image $(IMAGE) --name $(CLUSTER)

deploy: ## install CRDs, RBAC, operator and the models PVC; wait for the operator
	$(KUBECTL) apply -k manifests/
	$(KUBECTL) wait --for=condition=Established --timeout=60s crd/trainingjobs.mlvisor.dev crd/modelservers.mlvisor.dev crd/modelpipelines.mlvisor.dev
	$(KUBECTL) -n mlvisor-system rollout status deployment/mlvisor-operator --timeout=$(TIMEOUT)

demo: ## train iris, serve it, print a V2 prediction
	$(KUBECTL) -n $(NS) apply -f manifests/samples/iris.yaml
	$(KUBECTL) -n $(NS) wait --for=condition=Succeeded --timeout=$(TIMEOUT) trainingjob/iris
	$(KUBECTL) -n $(NS) wait --for=condition=Ready --timeout=$(TIMEOUT) modelserver/iris
	$(KUBECTL) -n $(NS) get trainingjob/iris modelserver/iris
	@$(KUBECTL) -n $(NS) port-forward svc/iris $(PORT):80 >/dev/null 2>&1 & pf=$$!; \
	trap "kill $$pf" EXIT; \
	for i in $$(seq 1 50); do curl -fsS -o /dev/null http://127.0.0.1:$(PORT)/v2/health/ready 2>/dev/null && break; sleep 0.2; done; \
	echo "POST http://127.0.0.1:$(PORT)/v2/models/iris/infer  (sepal 5.1 x 3.5, petal 1.4 x 0.2)"; \
	curl -fsS -H "Content-Type: application/json" http://127.0.0.1:$(PORT)/v2/models/iris/infer \
	  -d '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'; echo

e2e: ## kind cluster from scratch, image, deploy, cluster tests, delete the cluster
	@mkdir -p build
	$(MAKE) kind-up
	$(KIND) get kubeconfig --name $(CLUSTER) > $(KUBECONFIG_E2E)
	$(MAKE) image load
	KUBECONFIG=$(KUBECONFIG_E2E) $(MAKE) deploy
	MLVISOR_E2E_KUBECONFIG=$(KUBECONFIG_E2E) $(PYTHON) -m pytest -m cluster tests/cluster -v; rc=$$?; \
	$(MAKE) kind-down; exit $$rc

kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(CLUSTER)
