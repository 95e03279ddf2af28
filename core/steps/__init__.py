"""The steps: pure, synchronous functions of a state and its inputs, with no Kafka, I/O or clock.

``workspace.step`` judges one workspace's inbox messages of a batch; ``alerting``, ``fin`` and
``commands`` hold the rules it applies to alert settings, the Fin limit and profile commands.
Outputs are recorded in ``models.outputs.RecordedOutputs``; the agents in ``streams/pipeline``
read the tables, call the steps, write the tables and hand the recording to the sinks.
"""
