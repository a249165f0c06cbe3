"""``python -m cecl.launch``: the pipeline with N DVC stages in flight, on one host or a Ray cluster.

Not a scheduler: DVC decides what runs and records it, Ray places the work.

- :mod:`cecl.launch.dag` reads DVC's own DAG, serial order and status (what is out of date);
- :mod:`cecl.launch.slots` maps stage kinds to Ray resources (a GPU, a GPU fraction or CPU slots);
- :mod:`cecl.launch.tasks` is the Ray task: ``dvc --wait-for-lock repro -s <stage>`` in its own process
  group, with a per-stage log, a timeout and retries (Ray's ``max_retries``);
- :mod:`cecl.launch.checkout` gives each cluster node its own checkout of the commit; outputs travel
  through the DVC remote and its run-cache;
- :mod:`cecl.launch.server` starts the MLflow server the parallel stages log to;
- :mod:`cecl.launch.single` holds the workspace's launch lock (one launch at a time) and clears DVC's
  stale rwlock;
- :mod:`cecl.launch.lockfile` puts dvc.lock's entries in the order a serial ``dvc repro`` writes them,
  and prunes the entries of stages dvc.yaml no longer defines;
- :mod:`cecl.launch.runlogs` names each launch's log folder by its UTC start time and pid;
- :mod:`cecl.launch.__main__` is the command line and the loop that submits a stage once all its
  upstream stages succeeded.
"""
