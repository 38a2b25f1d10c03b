"""One router per resource; every module here that defines ``router`` is mounted by the app."""
