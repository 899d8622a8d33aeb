"""mlvisor: scikit-learn training and serving on Kubernetes, supervised like Erlang/OTP.

The distribution maps three fixed top-level folders onto this namespace:
``operator/`` -> ``mlvisor.operator``, ``server/`` -> ``mlvisor.server`` and
``trainer/`` -> ``mlvisor.trainer`` (a top-level package named ``operator`` cannot
work: the stdlib module of that name is loaded before user code).
"""

__version__ = "0.1.0"
