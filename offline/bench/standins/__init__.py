"""Stand-ins and harnesses for running the operator without a cluster: a kube-apiserver stand-in (kmock + CRD
validation), a Loki stand-in, a real Prometheus and a real Alertmanager started on 127.0.0.1, a fault proxy, and the
operator as a `kopf run` process. The tests, the playground and the operator benchmark use them. Loki and the
Kubernetes API server cannot be installed here, so those two are stand-ins, named as such."""
