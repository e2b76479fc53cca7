#!/bin/bash
# Runs the PyTorch reference's self-test (finite differences, naive attention, AdamW against
# torch.optim, and the comparator passing an exact dump and failing perturbed ones).
set -euo pipefail
exec /usr/bin/python3 "$TEST_SRCDIR/moelab/tests/reference/moe_reference.py" --selftest
