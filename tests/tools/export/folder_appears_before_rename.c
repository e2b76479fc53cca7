// A test seam loaded with LD_PRELOAD: just before export renames its written folder to an --out that
// did not exist at its start, another process (a second export to the same --out) creates that
// folder with a file in it, the race of two exports run at once.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int rename(const char *oldpath, const char *newpath) {
    int (*real)(const char *, const char *) = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    struct stat st;
    if (strstr(oldpath, ".tmp-") && stat(oldpath, &st) == 0 && S_ISDIR(st.st_mode) && stat(newpath, &st) != 0 &&
        mkdir(newpath, 0755) == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/README.md", newpath);
        FILE *f = fopen(path, "w");
        if (f) fputs("the other export's\n", f), fclose(f);
    }
    return real(oldpath, newpath);
}
