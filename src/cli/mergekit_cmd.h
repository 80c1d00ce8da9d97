/*
 * mergekit_cmd.h: the `mergekit` subcommand of fusion_bench (mergekit_cmd.c).
 */
#ifndef FB_CLI_MERGEKIT_CMD_H
#define FB_CLI_MERGEKIT_CMD_H

/* argv[0] is the first argument after "mergekit"; returns the exit status. */
int fb_mergekit_main(int argc, char **argv);
/* `fusion_bench mergekit-extract-lora ...`: argv[0] is the first argument after it. */
int fb_mergekit_extract_main(int argc, char **argv);

#endif
