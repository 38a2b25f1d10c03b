"""Federation: hazardlens instances (each province's, the ministry's) sharing the sample library,
model versions and feedback counts over signed HTTP (issue 17). ``keys`` holds this instance's
Ed25519 key pair, ``signing`` the request/answer signatures, ``peers`` the instances we know,
``serve`` what we answer a peer, ``sync`` what we pull from and push to one."""
