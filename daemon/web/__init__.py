"""The reference web dashboard: static files served by :mod:`daemon.web_server` (package data).

``mqtt.min.js`` is MQTT.js 5.16.0 (npm ``mqtt``, ``dist/mqtt.min.js``, MIT), vendored unchanged
but for the licence header prepended to it: the gateway has no internet, so no CDN.
"""
