"""Repository rule @local_cuda: the CUDA toolkit found on this machine, or a stub when it has none.

nvcc is looked up as $CUDA_PATH/bin/nvcc, then on PATH; the toolkit root is the folder above its
bin/. The repository exposes:
  :nvcc       the compiler (in the stub, a script that fails with a clear message)
  :headers    the toolkit's top-level headers (cuda_runtime.h, cublas_v2.h, ...)
  :cudart, :cublas, :cublasLt, :cupti, :nccl   the shared libraries (link flags with an rpath;
              CUPTI only for tools/trace)
  :cutlass    CUTLASS's headers (cute/, cutlass/ and its util headers) as tools/install_deps.sh
              unpacks them into /opt/moelab/cutlass; where they are missing, a cutlass/cutlass.h
              that stops the compile with a message saying how to get them
  :cudnn      cuDNN 9's headers (cudnn*.h, next to the toolkit's or the system's), headers only:
              the library is loaded at run time (layers/attention_cudnn.cu), never linked
  :cudnn_frontend  cuDNN's header-only C++ frontend as install_deps.sh unpacks it into
              /opt/moelab/cudnn_frontend; missing headers of either become one that stops the
              compile with a message
  defs.bzl    CUDA_FOUND, CUDA_ROOT, NVCC (the compiler's absolute path: nvcc finds its own
              tools, cicc and ptxas, relative to where it really lives, so it is called there)
The stub keeps every name, so a build without --config=cuda loads this package on any machine
(select() branches are loaded even when not taken) and never needs a CUDA file.
"""

_LIBS = ["cudart", "cublas", "cublasLt", "cupti"]

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

def _cc(name, hdrs = "[]", includes = [], linkopts = []):
    """The text of one cc_library; hdrs is Starlark text (a list or a glob)."""
    return "cc_library(\n    name = %r,\n    hdrs = %s,\n    includes = %r,\n    linkopts = %r,\n)\n" % (
        name,
        hdrs,
        includes,
        linkopts,
    )

def _link(libdir, lib):
    return ["-L" + libdir, "-Wl,-rpath," + libdir, "-l" + lib]

def _write(rctx, build, found, root, nvcc):
    head = "package(default_visibility = [\"//visibility:public\"])\n\nexports_files([\"nvcc\"])\n\n"
    rctx.file("BUILD", head + build)
    rctx.file("defs.bzl", "CUDA_FOUND = %r\nCUDA_ROOT = %r\nNVCC = %r\n" % (found, root, nvcc))

# Where tools/install_deps.sh unpacks the pinned CUTLASS (header-only, from the nvidia-cutlass package).
_CUTLASS_DIR = "/opt/moelab/cutlass"
CUTLASS_INCLUDES = ["cutlass/include", "cutlass/util/include"]

def _cutlass(rctx):
    """The text of the :cutlass library: the headers found, or one that stops the compile."""
    if rctx.path(_CUTLASS_DIR + "/include/cutlass/cutlass.h").exists:
        rctx.symlink(_CUTLASS_DIR + "/include", "cutlass/include")
        rctx.symlink(_CUTLASS_DIR + "/util/include", "cutlass/util/include")
        return _cc("cutlass", "glob([\"cutlass/include/**\", \"cutlass/util/include/**\"])", CUTLASS_INCLUDES)
    rctx.file("cutlass/include/cutlass/cutlass.h",
              "#error \"CUTLASS not found in %s: run tools/install_deps.sh\"\n" % _CUTLASS_DIR)
    return _cc("cutlass", "[\"cutlass/include/cutlass/cutlass.h\"]", CUTLASS_INCLUDES)

# Where tools/install_deps.sh unpacks the pinned cuDNN frontend (from the nvidia-cudnn-frontend package).
_CUDNN_FRONTEND_DIR = "/opt/moelab/cudnn_frontend"

# cuDNN 9's headers: cudnn.h and what it includes (the _v9 names are the Debian packages' own).
_CUDNN_HEADERS = ["cudnn%s%s.h" % (part, v9) for part in ["", "_adv", "_backend", "_cnn", "_graph", "_ops", "_version"]
                  for v9 in ["", "_v9"]]

def _cudnn(rctx, inc_dirs):
    """The text of :cudnn and :cudnn_frontend: the headers found, or ones that stop the compile."""
    build = ""
    cudnn_dir = _first_dir_with(rctx, inc_dirs, "cudnn.h")
    if cudnn_dir:
        for h in _CUDNN_HEADERS:
            if rctx.path(cudnn_dir + "/" + h).exists:
                rctx.symlink(cudnn_dir + "/" + h, "cudnn/include/" + h)
        build += _cc("cudnn", "glob([\"cudnn/include/*.h\"])", ["cudnn/include"])
    else:
        rctx.file("cudnn/include/cudnn.h", "#error \"cudnn.h (cuDNN 9) not found in %s\"\n" % " ".join(inc_dirs))
        build += _cc("cudnn", "[\"cudnn/include/cudnn.h\"]", ["cudnn/include"])
    if rctx.path(_CUDNN_FRONTEND_DIR + "/include/cudnn_frontend.h").exists:
        rctx.symlink(_CUDNN_FRONTEND_DIR + "/include", "cudnn_frontend/include")
        build += _cc("cudnn_frontend", "glob([\"cudnn_frontend/include/**\"])", ["cudnn_frontend/include"])
    else:
        rctx.file("cudnn_frontend/include/cudnn_frontend.h",
                  "#error \"cuDNN frontend not found in %s: run tools/install_deps.sh\"\n" % _CUDNN_FRONTEND_DIR)
        build += _cc("cudnn_frontend", "[\"cudnn_frontend/include/cudnn_frontend.h\"]", ["cudnn_frontend/include"])
    return build

def _stub(rctx, why):
    rctx.file("nvcc", "#!/bin/sh\necho 'moelab: error: %s' >&2\nexit 1\n" % why, executable = True)
    build = "# Stub: %s\n" % why
    for lib in ["headers", "nccl", "cutlass", "cudnn", "cudnn_frontend"] + _LIBS:
        build += _cc(lib)
    _write(rctx, build, False, "", str(rctx.path("nvcc")))

def _cuda_configure_impl(rctx):
    nvcc = _find_nvcc(rctx)
    if nvcc == None:
        _stub(rctx, "nvcc not found (PATH, $CUDA_PATH): install the CUDA toolkit to build " +
                    "with --config=cuda")
        return
    root = str(nvcc.dirname.dirname)
    lib_dirs = [root + "/lib64", root + "/lib", root + "/targets/x86_64-linux/lib"]
    libdir = _first_dir_with(rctx, lib_dirs, "libcudart.so")
    if libdir == None:
        _stub(rctx, "libcudart.so not found under " + root)
        return

    rctx.symlink(nvcc, "nvcc")
    rctx.symlink(root + "/include", "include")
    build = "# The CUDA toolkit at %s (found by third_party/cuda/cuda_configure.bzl).\n" % root
    build += _cc("headers", "glob([\"include/*.h\", \"include/crt/*\"])", ["include"])
    for lib in _LIBS:
        build += _cc(lib, linkopts = _link(libdir, lib))

    # NCCL ships apart from the toolkit: next to it, or from the distribution's packages.
    nccl_libdir = _first_dir_with(rctx, [libdir, "/usr/lib/x86_64-linux-gnu", "/usr/lib64"], "libnccl.so")
    nccl_incdir = _first_dir_with(rctx, [root + "/include", "/usr/include", "/usr/local/include"], "nccl.h")
    if nccl_libdir and nccl_incdir:
        rctx.symlink(nccl_incdir + "/nccl.h", "nccl_include/nccl.h")
        build += _cc("nccl", "[\"nccl_include/nccl.h\"]", ["nccl_include"], _link(nccl_libdir, "nccl"))
    else:
        build += "# NCCL (libnccl.so and nccl.h) was not found: :nccl is empty.\n" + _cc("nccl")
    build += _cutlass(rctx)
    build += _cudnn(rctx, [root + "/include", "/usr/include", "/usr/include/x86_64-linux-gnu"])
    _write(rctx, build, True, root, str(nvcc))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH", "PATH"],
    local = True,
)
