/*
 * The server's side of the figures: CPU time and resident memory as /proc shows them. On a
 * two-core machine the load generator competes with the server for the CPU, so requests per
 * second say as much about the client as the server; the server's own CPU time per operation is
 * the fair comparison. nginx does its work in a child of the process it was started as, so a
 * sample adds up the process and its direct children.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* utime and stime of one process (all its threads), in clock ticks; false if it is gone. */
static bool proc_cpu(int pid, uint64_t *uticks, uint64_t *sticks)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name may hold spaces and parentheses: fields are counted after the last ')'. */
    char *p = strrchr(buf, ')');
    unsigned long long utime, stime;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return false;
    *uticks = utime;
    *sticks = stime;
    return true;
}

static bool proc_rss(int pid, uint64_t *kib)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool ok = false;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long v;
        if (sscanf(line, "VmRSS: %llu kB", &v) == 1) {
            *kib = v;
            ok = true;
            break;
        }
    }
    fclose(f);
    return ok;
}

static void add_process(int pid, struct server_sample *s)
{
    uint64_t ut = 0, st = 0, kib = 0;
    if (proc_cpu(pid, &ut, &st)) {
        s->cpu_ticks += ut + st;
        s->user_ticks += ut;
        s->sys_ticks += st;
    }
    if (proc_rss(pid, &kib))
        s->rss_kib += kib;
}

struct server_sample server_sample(int pid)
{
    struct server_sample s = {0};
    uint64_t ut, st;
    if (!proc_cpu(pid, &ut, &st))
        return s;
    s.ok = true;
    add_process(pid, &s);

    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return s;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char cpath[320];
        snprintf(cpath, sizeof(cpath), "/proc/%d/task/%s/children", pid, e->d_name);
        FILE *f = fopen(cpath, "r");
        if (!f)
            continue;
        for (int child; fscanf(f, "%d", &child) == 1;)
            add_process(child, &s);
        fclose(f);
    }
    closedir(d);
    return s;
}
