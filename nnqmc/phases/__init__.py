"""The phases of a run, one module each, all written against :mod:`nnqmc.rundir`:

* :mod:`nnqmc.phases.training`: variational optimisation (:func:`train`), checkpointed
  and resumable;
* :mod:`nnqmc.phases.evaluation`: sampling with frozen parameters (:func:`evaluate`),
  checkpointed and resumable.

The jitted steps they loop over are built in :mod:`nnqmc.steps`; :mod:`nnqmc.runner`
chains the phases into one ``nnqmc run``.
"""
