"""The chat page's static files (index.html, app.js, ...), served by server/webui.py."""
