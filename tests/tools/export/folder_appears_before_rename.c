// A test seam loaded with LD_PRELOAD: just before export renames its written folder to an --out that
// did not exist at its start (renameat2 with RENAME_NOREPLACE), another process (a second export to
// the same --out) creates that folder with a file in it, the race of two exports run at once.
#ifndef _GNU_SOURCE  // dlsym's RTLD_NEXT (the build defines it for every C file)
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    int (*real)(int, const char *, int, const char *, unsigned int) =
        (int (*)(int, const char *, int, const char *, unsigned int))dlsym(RTLD_NEXT, "renameat2");
    struct stat st;
    if ((flags & RENAME_NOREPLACE) && strstr(oldpath, ".tmp-") && stat(newpath, &st) != 0 &&
        mkdir(newpath, 0755) == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/README.md", newpath);
        FILE *f = fopen(path, "w");
        if (f) fputs("the other export's\n", f), fclose(f);
    }
    return real(olddirfd, oldpath, newdirfd, newpath, flags);
}
