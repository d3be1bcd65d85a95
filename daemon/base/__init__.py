"""What every layer of the daemon uses: the root exception, time formats, the data directory,
logging setup, and the MQTT contract's vocabulary (the message envelope and topic names)."""
