// SPDX-License-Identifier: GPL-2.0
/*
 * failnth: one kernel path, run again and again under the fault injection framework's
 * per-task knob (Documentation/fault-injection/fault-injection.rst, "systematic faults"):
 * the 1st allocation the path makes fails, then the 2nd, ... until a run completes with
 * no failure injected. Which allocations count is the framework's business: failslab and
 * fail_page_alloc, with their debugfs filters (the scenario counts only allocations made
 * under a module's code, `require-start`/`require-end`).
 *
 *   failnth write FILE TEXT            the path: write(2) of TEXT to FILE
 *   failnth load MODULE.ko [PARAMS]    the path: finit_module(2); a load that succeeds is
 *                                      undone with delete_module(2) before the next run
 *   failnth task TID -- COMMAND...     the path: COMMAND, run to its end, while the
 *                                      failure is armed in task TID (a daemon that does
 *                                      the work COMMAND asks of it)
 *
 *   failnth --sample HEAD,STRIDE ...   for a path too long to fail at every point (an iSER
 *                                      login: about 4000 allocations, seconds a run on the
 *                                      debug kernel): one run first counts the
 *                                      allocations, N; then the failure lands on each of
 *                                      the first HEAD and the last HEAD, and on every
 *                                      STRIDE-th between (a STRIDE prime to the length of
 *                                      the path's loops lands on each allocation of a loop
 *                                      body somewhere)
 *
 * Every file the path needs is opened before the first run, and nothing but the path
 * runs between arming the knob and reading it back, so a run's failure lands in the path.
 * One line per run: "run N: injected|not injected: ok|<error>"; then "points: P", the
 * runs that had a failure injected (sampled: first "allocations: N", the count). Exit
 * status 0 when each injected run ended in an error or in success and the run with
 * nothing injected succeeded; 1 otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* More allocations than any path here makes: a path that never stops is a failure. */
#define MAX_RUNS 20000

static int arm(int fd, unsigned int n)
{
	char text[16];
	int len = snprintf(text, sizeof(text), "%u", n);

	return pwrite(fd, text, len, 0) == len ? 0 : -1;
}

/* Whether the armed failure was injected (the knob reads 0); disarms it. */
static int injected(int fd)
{
	char text[16] = { 0 };
	ssize_t len = pread(fd, text, sizeof(text) - 1, 0);

	arm(fd, 0);
	return len > 0 && strtoul(text, NULL, 10) == 0;
}

struct path {
	int (*run)(struct path *p);
	int fd;
	const char *text;
	const char *module;
	char *const *argv;
};

static int run_write(struct path *p)
{
	size_t len = strlen(p->text);

	return write(p->fd, p->text, len) == (ssize_t)len ? 0 : -errno;
}

static int run_load(struct path *p)
{
	if (syscall(SYS_finit_module, p->fd, p->text, 0))
		return -errno;
	return 0;
}

static int unload(const char *module)
{
	char path[128];

	if (syscall(SYS_delete_module, module, O_NONBLOCK)) {
		fprintf(stderr, "failnth: delete_module %s: %s\n", module, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "/sys/module/%s", module);
	if (!access(path, F_OK)) {
		fprintf(stderr, "failnth: %s still present after unloading\n", module);
		return -1;
	}
	return 0;
}

static int run_command(struct path *p)
{
	int status;
	pid_t child = fork();

	if (child < 0)
		return -errno;
	if (!child) {
		execvp(p->argv[0], p->argv);
		_exit(127);
	}
	if (waitpid(child, &status, 0) < 0)
		return -errno;
	if (WIFEXITED(status) && !WEXITSTATUS(status))
		return 0;
	return -EIO;
}

static const char *describe(int result)
{
	static char text[64];

	if (!result)
		return "ok";
	snprintf(text, sizeof(text), "%s", strerrorname_np(-result) ?: "error");
	return text;
}

/* The allocations one run of the path makes with nothing failed; -1 if it failed. */
static long count_allocations(struct path *p, int knob)
{
	const unsigned int armed = 1U << 30;
	char text[16] = { 0 };
	int result;

	if (arm(knob, armed))
		return -1;
	result = p->run(p);
	if (pread(knob, text, sizeof(text) - 1, 0) <= 0)
		return -1;
	arm(knob, 0);
	if (result) {
		fprintf(stderr, "failnth: the counting run failed: %s\n", describe(result));
		return -1;
	}
	if (p->module && unload(p->module))
		return -1;
	return armed - strtoul(text, NULL, 10);
}

int main(int argc, char **argv)
{
	struct path p = { .fd = -1 };
	const char *armed_task = "thread-self";
	unsigned int points = 0;
	unsigned int n, head = 0, stride = 1;
	long allocations = -1;
	int knob;

	if (argc >= 3 && !strcmp(argv[1], "--sample")) {
		if (sscanf(argv[2], "%u,%u", &head, &stride) != 2 || !stride) {
			fprintf(stderr, "failnth: --sample HEAD,STRIDE\n");
			return 2;
		}
		argc -= 2;
		argv += 2;
	}
	if (argc >= 4 && !strcmp(argv[1], "write")) {
		p.run = run_write;
		p.fd = open(argv[2], O_WRONLY);
		p.text = argv[3];
	} else if (argc >= 3 && !strcmp(argv[1], "load")) {
		static char name[64];
		char *dot;

		p.run = run_load;
		p.fd = open(argv[2], O_RDONLY | O_CLOEXEC);
		p.text = argc > 3 ? argv[3] : "";
		snprintf(name, sizeof(name), "%s", basename(argv[2]));
		dot = strchr(name, '.');
		if (dot)
			*dot = 0;
		p.module = name;
	} else if (argc >= 5 && !strcmp(argv[1], "task") && !strcmp(argv[3], "--")) {
		p.run = run_command;
		p.argv = argv + 4;
		armed_task = argv[2];
	} else {
		fprintf(stderr, "usage: failnth [--sample HEAD,STRIDE] write FILE TEXT | load MODULE.ko [PARAMS] | task TID -- COMMAND...\n");
		return 2;
	}
	if (p.run != run_command && p.fd < 0) {
		perror("failnth: open");
		return 1;
	}
	if (!strcmp(armed_task, "thread-self")) {
		knob = open("/proc/thread-self/fail-nth", O_RDWR);
	} else {
		char path[64];

		/* The knob is the thread's (tid_base_stuff), not the process's. */
		snprintf(path, sizeof(path), "/proc/%s/task/%s/fail-nth", armed_task, armed_task);
		knob = open(path, O_RDWR);
	}
	if (knob < 0) {
		perror("failnth: fail-nth");
		return 1;
	}
	if (stride > 1) {
		allocations = count_allocations(&p, knob);
		if (allocations < 0)
			return 1;
		printf("allocations: %ld\n", allocations);
	}
	for (n = 1; n <= MAX_RUNS; n++) {
		int result, hit;

		/* Sampled: between the head and the tail, only every stride-th point. */
		if (allocations >= 0 && n > head && (long)n + head <= allocations &&
		    (n - head) % stride)
			continue;
		if (arm(knob, n)) {
			perror("failnth: arming fail-nth");
			return 1;
		}
		result = p.run(&p);
		hit = injected(knob);
		printf("run %u: %s: %s\n", n, hit ? "injected" : "not injected", describe(result));
		fflush(stdout);
		if (!result && p.module && unload(p.module))
			return 1;
		if (hit) {
			points++;
			continue;
		}
		printf("points: %u\n", points);
		if (result) {
			fprintf(stderr, "failnth: the path failed with nothing injected: %s\n",
				describe(result));
			return 1;
		}
		return 0;
	}
	fprintf(stderr, "failnth: the path still allocates after %u runs\n", MAX_RUNS);
	return 1;
}
