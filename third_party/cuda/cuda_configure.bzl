"""Repository rule @local_cuda: the CUDA toolkit found on this machine, or a stub when it has none.

nvcc is looked up as $CUDA_PATH/bin/nvcc, then on PATH; the toolkit root is the folder above its
bin/. The repository exposes:
  :nvcc       the compiler (a script that fails with a clear message in the stub)
  :headers    the toolkit's top-level headers (cuda_runtime.h, cublas_v2.h, ...)
  :cudart, :cublas, :cublasLt, :nccl   link flags for the shared libraries, with an rpath
  defs.bzl    CUDA_FOUND, CUDA_ROOT, NVCC (the compiler's absolute path: nvcc finds its own
              tools, cicc and ptxas, relative to where it really lives, so it is called there)
The stub keeps every name, so a build without --config=cuda loads this package on any machine
(select() branches are loaded even when not taken) and never needs a CUDA file.
"""

_LIBS = ["cudart", "cublas", "cublasLt"]

def _find_nvcc(rctx):
    cuda_path = rctx.os.environ.get("CUDA_PATH", "")
    if cuda_path:
        p = rctx.path(cuda_path + "/bin/nvcc")
        if p.exists:
            return p
    return rctx.which("nvcc")

def _first_dir_with(rctx, dirs, name):
    for d in dirs:
        if rctx.path(d + "/" + name).exists:
            return d
    return None

def _lib_target(name, libdir, lib):
    if not libdir:
        return "cc_library(name = \"%s\")\n" % name
    return ("cc_library(\n    name = \"%s\",\n    linkopts = [\"-L%s\", \"-Wl,-rpath,%s\", \"-l%s\"],\n)\n" %
            (name, libdir, libdir, lib))

def _stub(rctx, why):
    rctx.file("nvcc", "#!/bin/sh\necho 'moelab: error: %s' >&2\nexit 1\n" % why, executable = True)
    build = "# Stub: %s\npackage(default_visibility = [\"//visibility:public\"])\n" % why
    build += "exports_files([\"nvcc\"])\n"
    build += "cc_library(name = \"headers\")\n"
    for lib in _LIBS + ["nccl"]:
        build += "cc_library(name = \"%s\")\n" % lib
    rctx.file("BUILD", build)
    rctx.file("defs.bzl", "CUDA_FOUND = False\nCUDA_ROOT = \"\"\nNVCC = \"%s\"\n" % rctx.path("nvcc"))

def _cuda_configure_impl(rctx):
    nvcc = _find_nvcc(rctx)
    if nvcc == None:
        _stub(rctx, "nvcc not found (PATH, $CUDA_PATH): install the CUDA toolkit to build with --config=cuda")
        return
    root = str(nvcc.dirname.dirname)
    libdir = _first_dir_with(rctx, [root + "/lib64", root + "/lib", root + "/targets/x86_64-linux/lib"], "libcudart.so")
    if libdir == None:
        _stub(rctx, "libcudart.so not found under " + root)
        return

    # NCCL ships apart from the toolkit: next to it, or from the distribution's packages.
    nccl_dirs = [libdir, "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib"]
    nccl_libdir = _first_dir_with(rctx, nccl_dirs, "libnccl.so")
    nccl_incdir = _first_dir_with(rctx, [root + "/include", "/usr/include", "/usr/local/include"], "nccl.h")

    rctx.symlink(nvcc, "nvcc")
    rctx.symlink(root + "/include", "include")
    build = "# The CUDA toolkit at %s (found by third_party/cuda/cuda_configure.bzl).\n" % root
    build += "package(default_visibility = [\"//visibility:public\"])\n"
    build += "exports_files([\"nvcc\"])\n"
    build += "cc_library(\n    name = \"headers\",\n    hdrs = glob([\"include/*.h\", \"include/crt/*\"]),\n    includes = [\"include\"],\n)\n"
    for lib in _LIBS:
        build += _lib_target(lib, libdir, lib)
    if nccl_libdir and nccl_incdir:
        rctx.symlink(nccl_incdir + "/nccl.h", "nccl_include/nccl.h")
        build += ("cc_library(\n    name = \"nccl\",\n    hdrs = [\"nccl_include/nccl.h\"],\n    includes = [\"nccl_include\"],\n    linkopts = [\"-L%s\", \"-Wl,-rpath,%s\", \"-lnccl\"],\n)\n" %
                  (nccl_libdir, nccl_libdir))
    else:
        build += "# NCCL (libnccl.so and nccl.h) was not found: :nccl is empty.\ncc_library(name = \"nccl\")\n"
    rctx.file("BUILD", build)
    rctx.file("defs.bzl", "CUDA_FOUND = True\nCUDA_ROOT = \"%s\"\nNVCC = \"%s\"\n" % (root, nvcc))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH", "PATH"],
    local = True,
)
