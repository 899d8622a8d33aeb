"""The mlvisor operator: the OTP-style supervision core, the pure planners and builders, and
the two shells that carry out their plans (``kube``: the Kubernetes controllers; ``local``:
``mlvisor run``'s supervised local processes), plus the ``mlvisor`` command."""
