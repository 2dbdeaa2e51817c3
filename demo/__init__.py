"""The demo and test harness: a private Mosquitto, the sample footage, the `make demo` run."""
