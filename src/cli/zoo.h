/*
 * zoo.h: `fusion_bench zoo`, which trains the model zoo (see zoo.c and docs/zoo.md).
 */
#ifndef FB_CLI_ZOO_H
#define FB_CLI_ZOO_H

/* Runs the zoo command with the arguments after "zoo"; returns the exit status. */
int fb_zoo_main(const char *config_dir, int argc, char **argv);

#endif
