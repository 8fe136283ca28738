"""The phases of a run, one module each, each giving its start, step and state to the one
loop, :class:`nnqmc.driver.Driver`:

* :mod:`nnqmc.phases.training`: variational optimisation (:func:`train`);
* :mod:`nnqmc.phases.evaluation`: sampling with frozen parameters (:func:`evaluate`);
* :mod:`nnqmc.phases.dmc`: fixed-node diffusion Monte Carlo (:func:`dmc`).

The jitted steps they loop over are built in :mod:`nnqmc.steps`, :mod:`nnqmc.programs` and
:mod:`nnqmc.diffusion`; :mod:`nnqmc.runner` chains the phases into one ``nnqmc run``.
"""
