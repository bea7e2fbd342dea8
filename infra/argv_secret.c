/* Keeps a secret off a server's command line (issue 25: Triton's admin key was readable by any local user in
 * /proc/PID/cmdline and `ps`). tritonserver takes its restricted-protocol key only as an argument, so it is
 * started with a placeholder there and this library preloaded (LD_PRELOAD): before main() runs, each argument
 * holding ALLOYNET_SECRET_PLACEHOLDER is replaced, in the argv array main() receives, by a heap copy with the
 * secret read from the file named by $ALLOYNET_SECRET_FILE (0600, the serving user's). The argument area the
 * kernel shows in /proc/PID/cmdline keeps the placeholder. glibc calls .init_array functions with
 * (argc, argv, envp) and then main() with the same argv array, which is what this relies on.
 *
 * Built by infra/triton.py (cc -shared -fPIC). A file that cannot be read ends the process (exit 2): the
 * server must not start with the placeholder as its key. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLACEHOLDER "@ALLOYNET_SECRET@"
#define MAX_SECRET 4096

static void substitute(int argc, char **argv, char **envp) {
    (void)envp;
    const char *path = getenv("ALLOYNET_SECRET_FILE");
    if (path == NULL || *path == '\0') return;
    char secret[MAX_SECRET];
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "alloynet: cannot read the secret file %s\n", path);
        _exit(2);
    }
    size_t n = fread(secret, 1, sizeof secret - 1, f);
    fclose(f);
    secret[n] = '\0';
    while (n > 0 && (secret[n - 1] == '\n' || secret[n - 1] == '\r' || secret[n - 1] == ' ')) secret[--n] = '\0';
    if (n == 0) {
        fprintf(stderr, "alloynet: the secret file %s is empty\n", path);
        _exit(2);
    }
    for (int i = 0; i < argc; i++) {
        char *at = strstr(argv[i], PLACEHOLDER);
        if (at == NULL) continue;
        size_t len = strlen(argv[i]) - strlen(PLACEHOLDER) + n + 1;
        char *copy = malloc(len);
        if (copy == NULL) _exit(2);
        snprintf(copy, len, "%.*s%s%s", (int)(at - argv[i]), argv[i], secret, at + strlen(PLACEHOLDER));
        argv[i] = copy;
    }
    memset(secret, 0, sizeof secret);
    /* what the server spawns (backend stubs) needs neither */
    unsetenv("ALLOYNET_SECRET_FILE");
    unsetenv("LD_PRELOAD");
}

__attribute__((section(".init_array"), used)) static void (*alloynet_argv_secret)(int, char **, char **) = substitute;
