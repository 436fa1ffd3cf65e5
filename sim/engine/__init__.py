"""The serving engine: KV blocks, memory layout, PCIe links, the iteration executor, the scheduler, the
instance and the cluster, and the two contracts the engine calls (`policy`: offload policies; `handler`:
overload handlers). Nothing here knows a particular policy or handler."""
