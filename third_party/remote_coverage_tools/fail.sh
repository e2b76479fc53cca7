#!/bin/sh
# Stub for Bazel's coverage tool targets: coverage is not available offline.
echo "coverage tools are not available in the offline build" >&2
exit 1
