"""Everything that runs inside a target (the host, a qemu guest, a Vagrant box, a remote machine).

The agent (:mod:`.main`, run as ``python -m overlaylab.agent``), its probes, the backing
filesystems it makes, the profiles and recipes it makes them from, the scenario framework and
catalogue, command running, process helpers, the owner markers that let ``cleanup`` find what a
dead run left, and the records it prints. It imports only the standard library and the port
(``graphdriver``, ``archive``, ``idtools``, ``goerrors``, ``mountutil``) — tests/agent/
test_import_closure.py holds it to that — so this package plus the port is what a target needs.
The host imports from here too (records, profiles, the catalogue), never the other way round.
"""
