/*
 * fuzz_config.c: libFuzzer target for the YAML reader, rendering, overrides and method
 * parameters. The input is split at its first NUL: YAML text, then "key=value" overrides
 * separated by newlines.
 */
#include <fusionbench.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    size_t yaml_len = strlen(text);
    fb_config *c;
    if (fb_config_parse(text, &c) == FB_OK) {
        char *y = fb_config_to_yaml(c);
        if (y) {
            fb_config *back;
            if (fb_config_parse(y, &back) == FB_OK) fb_config_free(back);
            free(y);
        }
        if (c->kind == FB_CFG_MAP && yaml_len < size) {
            for (char *line = strtok(text + yaml_len + 1, "\n"); line; line = strtok(NULL, "\n")) {
                char *eq = strchr(line, '=');
                if (!eq || eq == line) continue;
                *eq = '\0';
                fb_cfg_override(c, line, eq + 1);
            }
        }
        fb_method *m;
        if (fb_method_create_from_config(c, &m) == FB_OK) fb_method_free(m);
        fb_config_free(c);
    }
    free(text);
    return 0;
}
