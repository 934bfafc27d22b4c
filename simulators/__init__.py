"""Device simulator, test-fleet generator, ground truth and scoring.

- :mod:`simulators.generate`: ``emfence simulate --generate N -o DIR`` (zones + subjects)
- :mod:`simulators.movement`: where each subject really is, and what its devices report
- :mod:`simulators.scenario`: the message schedule of a run (what each slot publishes)
- :mod:`simulators.events`: injected events and the ground-truth file
- :mod:`simulators.publisher`: publishing like firmware over MQTT (QoS 1)
- :mod:`simulators.score`: ``emfence score``, alarms against the ground truth

See ``docs/simulator.md``.
"""
