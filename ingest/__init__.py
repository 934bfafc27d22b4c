"""Live intake: wire -> records. Wire-contract decoding, the MQTT client, broker accounts.

``ingest.decode`` is pure and imported by ``emfence replay`` too; the MQTT parts
(``ingest.mqtt``) import aiomqtt only when used; `emfence run` itself is
``emfence.run``.
"""
