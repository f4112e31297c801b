"""The scenario catalogue as a pytest suite against any testinfra host.

    pytest --pyargs overlaylab.testsuite --hosts=local:// --lab-profiles='ext4 or xfs'
    pytest --pyargs overlaylab.testsuite --hosts=ssh://root@127.0.0.1:2222 -k whiteout

Each test is one cell (profile x scenario, and x engine for the engine scenarios:
``--lab-engines`` as ``overlaylab run --engine``) and passes when the cell's outcome is the one its
facts lead to expect. The agent runs once per host and profile; the tests read its answers.
"""
