"""Worker pools for sweeps (the capacity planner, ``sim.search``): in-process, local processes (`local`),
or Ray (`ray_pool`)."""
