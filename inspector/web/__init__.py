"""The web visualizer: an aiohttp app that serves the page and talks gRPC to the services."""
