"""preload_seam: a test seam loaded with LD_PRELOAD, one C file that wraps libc calls (dlsym
RTLD_NEXT) to put a failure or a race at a chosen moment of a `moelab` run."""

def preload_seam(name, src):
    native.cc_binary(
        name = name,
        testonly = True,
        srcs = [src],
        linkopts = ["-ldl"],
        linkshared = True,
    )
