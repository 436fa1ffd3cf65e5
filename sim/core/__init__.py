"""The core types: units, model and hardware specs, requests and workloads, batch shapes, offload plans and
timeline records. Plain data with no simulation in it; everything else in ``sim`` builds on these."""
