/*
 * test_config.c: the YAML tree, typed getters and Hydra-style overrides.
 */
#include <math.h>
#include <stdlib.h>

#include "config/config.h"
#include "core/alloc.h"
#include "harness.h"

TEST(yaml_values_read_as_their_types)
{
    fb_config *c;
    REQUIRE_OK(fb_config_parse("a: 0.3\nb: true\nc: null\nd: '12'\ne: [1, 2.5, -3e-2]\n"
                               "f: {g: hello}\nh: ~\ni: 7\n",
                               &c));
    double d;
    int b;
    int64_t i;
    const char *s;
    EXPECT_OK(fb_cfg_double(fb_config_get(c, "a"), "a", &d));
    EXPECT(d == 0.3);
    EXPECT_OK(fb_cfg_bool(fb_config_get(c, "b"), "b", &b));
    EXPECT(b == 1);
    EXPECT(fb_cfg_is_null(fb_config_get(c, "c")) && fb_cfg_is_null(fb_config_get(c, "h")));
    /* a quoted number is a string */
    EXPECT_ERROR(fb_cfg_double(fb_config_get(c, "d"), "d", &d), FB_ERR_CONFIG, "'d' must be a number");
    EXPECT_OK(fb_cfg_string(fb_config_get(c, "d"), "d", &s));
    EXPECT(!strcmp(s, "12"));
    double *list;
    int n;
    EXPECT_OK(fb_cfg_double_list(fb_config_get(c, "e"), "e", &list, &n));
    EXPECT(n == 3 && list[1] == 2.5 && list[2] == -3e-2);
    fb_free(list);
    EXPECT_OK(fb_cfg_string(fb_config_get(c, "f.g"), "f.g", &s));
    EXPECT(!strcmp(s, "hello"));
    EXPECT_OK(fb_cfg_int(fb_config_get(c, "i"), "i", &i));
    EXPECT(i == 7);
    EXPECT_ERROR(fb_cfg_int(fb_config_get(c, "a"), "a", &i), FB_ERR_CONFIG, "an integer");
    EXPECT_ERROR(fb_cfg_bool(fb_config_get(c, "i"), "i", &b), FB_ERR_CONFIG, "true or false");
    fb_config_free(c);
}

TEST(overrides_follow_hydra_value_syntax)
{
    fb_config *c;
    REQUIRE_OK(fb_config_parse("method:\n  name: weighted_average\n  normalize: true\n", &c));
    EXPECT_OK(fb_cfg_override(c, "method.weights", "[0.5,0.3,0.2]"));
    EXPECT_OK(fb_cfg_override(c, "method.normalize", "false"));
    EXPECT_OK(fb_cfg_override(c, "merged_model_save_path", "out/merged.safetensors"));
    EXPECT_OK(fb_cfg_override(c, "new.deep.key", "null"));
    double *w;
    int n, b;
    EXPECT_OK(fb_cfg_double_list(fb_config_get(c, "method.weights"), "w", &w, &n));
    EXPECT(n == 3 && w[2] == 0.2);
    fb_free(w);
    EXPECT_OK(fb_cfg_bool(fb_config_get(c, "method.normalize"), "n", &b));
    EXPECT(b == 0);
    const char *s;
    EXPECT_OK(fb_cfg_string(fb_config_get(c, "merged_model_save_path"), "p", &s));
    EXPECT(!strcmp(s, "out/merged.safetensors"));
    EXPECT(fb_config_get(c, "new.deep") && fb_cfg_is_null(fb_config_get(c, "new.deep.key")));
    EXPECT_ERROR(fb_cfg_override(c, "method.name.x", "1"), FB_ERR_CONFIG, "not a mapping");
    EXPECT_ERROR(fb_cfg_override(c, "a..b", "1"), FB_ERR_CONFIG, "malformed key");
    EXPECT_ERROR(fb_cfg_override(c, "x", "[1, 2"), FB_ERR_CONFIG, "not valid YAML");
    fb_config_free(c);
}

TEST(bad_yaml_is_an_error_with_a_line)
{
    fb_config *c = NULL;
    EXPECT_ERROR(fb_config_parse("a: 1\na: 2\n", &c), FB_ERR_FORMAT, "duplicate key 'a'");
    EXPECT_ERROR(fb_config_parse("a: &x 1\nb: *x\n", &c), FB_ERR_FORMAT, "aliases");
    EXPECT_ERROR(fb_config_parse("a: [1, 2\n", &c), FB_ERR_FORMAT, ":");
    EXPECT_ERROR(fb_config_parse("a: 1\n---\nb: 2\n", &c), FB_ERR_FORMAT, "more than one");
    EXPECT_ERROR(fb_config_parse("{[1]: 2}", &c), FB_ERR_FORMAT, "plain scalars");
    EXPECT(c == NULL);
}

TEST(config_renders_as_yaml_that_parses_back_the_same)
{
    const char *text = "name: x\nweights:\n- 0.5\n- 0.25\nnested:\n  s: 'true'\n  t: \"a: b\"\n"
                       "  n: null\n  e: []\n  path: out/m.safetensors\n";
    fb_config *c, *back;
    REQUIRE_OK(fb_config_parse(text, &c));
    char *y = fb_config_to_yaml(c);
    REQUIRE(y);
    REQUIRE_OK(fb_config_parse(y, &back));
    const char *s;
    EXPECT_OK(fb_cfg_string(fb_config_get(back, "nested.s"), "s", &s));
    EXPECT(!strcmp(s, "true") && fb_config_get(back, "nested.s")->quoted);
    EXPECT_OK(fb_cfg_string(fb_config_get(back, "nested.t"), "t", &s));
    EXPECT(!strcmp(s, "a: b"));
    EXPECT(fb_cfg_is_null(fb_config_get(back, "nested.n")));
    double *w;
    int n;
    EXPECT_OK(fb_cfg_double_list(fb_config_get(back, "weights"), "w", &w, &n));
    EXPECT(n == 2 && w[1] == 0.25);
    fb_free(w);
    char *y2 = fb_config_to_yaml(back);
    EXPECT(y2 && !strcmp(y, y2));
    free(y);
    free(y2);
    fb_config_free(c);
    fb_config_free(back);
}

TEST(config_files_record_where_values_came_from)
{
    const char *path = fb_test_path("m.yaml");
    fb_test_write_file(path, "a: 1\nb: oops\n", 12);
    fb_config *c;
    REQUIRE_OK(fb_config_load(path, &c));
    double d;
    EXPECT_ERROR(fb_cfg_double(fb_config_get(c, "b"), "b", &d), FB_ERR_CONFIG, "m.yaml:2");
    fb_config_free(c);
    EXPECT_ERROR(fb_config_load(fb_test_path("none.yaml"), &c), FB_ERR_IO, "none.yaml");
}
