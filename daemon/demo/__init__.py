"""``infusiond demo``: the demo bedside in one process (simulated pumps and monitor, the
embedded MQTT broker, the gateway and its dashboard)."""
