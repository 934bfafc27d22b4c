"""`emfence run`, the live engine process: :class:`emfence.run.service.Service` wires
the parts (receive, batches, events, tracks, acks, sweeps, health); the command line is
:mod:`emfence.run.cli` (``python -m emfence.run``)."""
