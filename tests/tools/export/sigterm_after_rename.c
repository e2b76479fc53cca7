// A test seam loaded with LD_PRELOAD: renameat2 (export's atomic exchange of its folder) does its
// work, then the process gets SIGTERM, the worst moment for a polite signal: the new export is in
// place and the old one lies under the temporary name with a __pycache__ whose files nothing tracks.
#ifndef _GNU_SOURCE  // dlsym's RTLD_NEXT (the build defines it for every C file)
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>

int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    int (*real)(int, const char *, int, const char *, unsigned int) =
        (int (*)(int, const char *, int, const char *, unsigned int))dlsym(RTLD_NEXT, "renameat2");
    const int rc = real(olddirfd, oldpath, newdirfd, newpath, flags);
    raise(SIGTERM);
    return rc;
}
