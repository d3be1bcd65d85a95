"""The reference web dashboard: static files served by :mod:`daemon.ui.web_server` (package data).

``index.html`` + ``app.js`` + ``style.css``, no build step and no framework. The page reads
``config.json`` (``{"broker_ws_url", "gateway"}``) from the server that served it; the query
parameters ``?broker=ws://host:port/&gateway=ID`` override it, so the files also work from any
static server. It speaks MQTT 3.1.1 over WebSockets (the embedded amqtt broker knows no newer).

``mqtt.min.js`` is MQTT.js 5.16.0 (npm ``mqtt``, ``dist/mqtt.min.js``, MIT), vendored unchanged
but for the licence header prepended to it: the gateway has no internet, so no CDN.
"""
