"""Everything that runs inside a target (the host, a qemu guest, a Vagrant box, a remote machine).

The agent (:mod:`.main`, run as ``python -m overlaylab.agent``), its probes, the backing
filesystems it makes, the profiles and recipes it makes them from, the scenario framework and
catalogue, command running, process helpers, the owner markers that let ``cleanup`` find what a
dead run left, and the records it prints. It imports only the standard library and the port
(``graphdriver``, ``archive``, ``idtools``, ``goerrors``, ``mountutil``, ``paths``), which
tests/agent/test_import_closure.py holds it to: this package plus the port is what a target
needs. The host imports from here too (records, profiles, the catalogue), never the other way.
"""

#: What a target needs of the project, relative to the ``overlaylab`` package: this package and
#: the port. The Vagrant zipapp ships exactly these; the closure test holds the agent to them.
GUEST_PACKAGES = ("agent", "graphdriver", "archive")
GUEST_MODULES = ("__init__", "idtools", "goerrors", "mountutil", "paths")
