"""The fleet page: static files served by :mod:`daemon.fleet.serve` (package data).

``index.html`` + ``fleet.js`` + ``fleet.css``, no build step and no framework: the script
polls ``/api/fleet`` every few seconds and redraws one table row per gateway.
"""
