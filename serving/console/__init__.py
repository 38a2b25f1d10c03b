"""The web console: a single-page app in plain JavaScript (served by ``serving/routes/console.py``),
plus the headless tooling that drives it (a live server for a browser, screenshots)."""
