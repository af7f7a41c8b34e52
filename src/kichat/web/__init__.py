"""The gateway's HTTP face besides Socket.IO: REST API, limits, health, metrics, OpenAPI."""
