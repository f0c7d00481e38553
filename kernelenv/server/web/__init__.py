"""The browser playground served at ``/web``: static files shipped with the package."""
