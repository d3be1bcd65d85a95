"""The MQTT edge: parsing and authenticating commands (signing), refusing the bad ones at
bounded cost, and (with the bridge) the connection to the broker."""
