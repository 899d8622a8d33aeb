// mlvisor-k8s is the Kubernetes control plane and node in one binary, called by its first
// argument as hyperkube once was: `mlvisor-k8s etcd ...`, `mlvisor-k8s kube-apiserver ...`,
// `mlvisor-k8s kube-controller-manager ...`, `mlvisor-k8s kube-scheduler ...`,
// `mlvisor-k8s kubelet ...`, `mlvisor-k8s kube-proxy ...`. Each is the upstream command itself
// (same flags, same code); one binary links once and caches as one file.
package main

import (
	"fmt"
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mlvisor-k8s etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|version [flags]")
		os.Exit(2)
	}
	name, args := os.Args[1], os.Args[2:]
	switch name {
	case "etcd":
		etcdmain.Main(append([]string{"etcd"}, args...))
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubelet":
		cmd := kubelet.NewKubeletCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-proxy":
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "version":
		fmt.Println("kubernetes v1.33.13, etcd v3.5.21")
	default:
		fmt.Fprintf(os.Stderr, "mlvisor-k8s: unknown command %q\n", name)
		os.Exit(2)
	}
}
