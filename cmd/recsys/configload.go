package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/streamrec/recsys/serving"
)

// The configuration of `recsys serve` has one key per flag: the flag's
// dotted name is the key's path in the YAML file (--data.dir is
// data: {dir: ...}) and, upper-cased with dots and dashes as underscores
// and RECSYS_ in front, its environment variable (RECSYS_DATA_DIR). The one
// exceptions are --demo and --load, whose keys are demo.enabled and
// load.files (demo.events and load.format are beside them). Precedence:
// defaults < file < environment < flags.

// configKey returns the file key of flag name.
func configKey(flag string) string {
	switch flag {
	case "demo":
		return "demo.enabled"
	case "load":
		return "load.files"
	}
	return flag
}

// envName returns the environment variable of flag name.
func envName(flag string) string {
	return "RECSYS_" + strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(flag))
}

// envNotConfig are RECSYS_ variables that are not configuration keys but
// are read elsewhere (the CLI's token, the config file's path, the Python
// client and the tests), so they are not reported as unknown.
var envNotConfig = []string{"RECSYS_CONFIG", "RECSYS_TOKEN", "RECSYS_URL", "RECSYS_HTTP", "RECSYS_FLIGHT", "RECSYS_BIN", "RECSYS_TAOBAO", "RECSYS_EVAL_JSON", "RECSYS_KAFKA_CACHE"}

// configFlags are the flags that are not configuration keys.
func notConfigFlag(name string) bool { return name == "config" || name == "help" }

// resolveConfig sets every flag of fs that was not given on the command
// line from, in this order of precedence, the environment (RECSYS_*) and
// the YAML file path (if any; "" reads $RECSYS_CONFIG). It returns where
// each value came from ("flag", "env RECSYS_X", "file"; absent: default).
// Unknown keys in the file and unknown RECSYS_ variables are errors, named
// with the closest known key.
func resolveConfig(path string, fs *pflag.FlagSet) (map[string]string, error) {
	source := map[string]string{}
	byKey := map[string]*pflag.Flag{}
	byEnv := map[string]*pflag.Flag{}
	var keys []string
	fs.VisitAll(func(f *pflag.Flag) {
		if notConfigFlag(f.Name) {
			return
		}
		byKey[configKey(f.Name)] = f
		byEnv[envName(f.Name)] = f
		keys = append(keys, configKey(f.Name))
		if f.Changed {
			source[f.Name] = "flag"
		}
	})

	if path == "" {
		path = os.Getenv("RECSYS_CONFIG")
	}
	fileK := koanf.New(".")
	if path != "" {
		if err := fileK.Load(file.Provider(path), yaml.Parser()); err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("config %s: %w", path, pe.Err)
			}
			return nil, fmt.Errorf("config %s: not a YAML mapping of keys: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		var unknown []string
		for _, k := range fileK.Keys() {
			if byKey[k] == nil {
				unknown = append(unknown, unknownKey(k, keys))
			}
		}
		if len(unknown) > 0 {
			return nil, fmt.Errorf("config %s: %s", path, strings.Join(unknown, "; "))
		}
	}

	envK := koanf.New(".")
	var unknownEnv []string
	envNames := make([]string, 0, len(byEnv))
	for n := range byEnv {
		envNames = append(envNames, n)
	}
	if err := envK.Load(env.Provider("", env.Opt{Prefix: "RECSYS_", TransformFunc: func(k, v string) (string, any) {
		if f := byEnv[k]; f != nil {
			return k, v
		}
		if !slices.Contains(envNotConfig, k) {
			unknownEnv = append(unknownEnv, unknownKey(k, envNames))
		}
		return "", nil
	}}), nil); err != nil {
		return nil, err
	}
	if len(unknownEnv) > 0 {
		slices.Sort(unknownEnv)
		return nil, fmt.Errorf("environment: %s", strings.Join(unknownEnv, "; "))
	}

	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if notConfigFlag(f.Name) || f.Changed {
			return
		}
		if name := envName(f.Name); envK.Exists(name) {
			if err := setFlag(f, envK.Get(name)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
			source[f.Name] = "env " + name
			return
		}
		if k := configKey(f.Name); fileK.Exists(k) {
			if err := setFlag(f, fileK.Get(k)); err != nil {
				errs = append(errs, fmt.Errorf("config %s: %s: %w", path, k, err))
			}
			source[f.Name] = "file"
		}
	})
	return source, errors.Join(errs...)
}

// unknownKey names k as unknown, with the closest of known if one is near.
func unknownKey(k string, known []string) string {
	if best := serving.Closest(k, known); best != "" {
		return fmt.Sprintf("%s: unknown key (did you mean %s?)", k, best)
	}
	return fmt.Sprintf("%s: unknown key (recsys config print lists every key)", k)
}

// setFlag sets f to v, a value from the file (any YAML scalar or a list)
// or the environment (a string; comma-separated for lists). A list
// replaces the default, never appends to it.
func setFlag(f *pflag.Flag, v any) error {
	sv, isList := f.Value.(pflag.SliceValue)
	if list, ok := v.([]any); ok {
		if !isList {
			return fmt.Errorf("a list, but the key takes %s", typeWords(f))
		}
		items := make([]string, len(list))
		for i, x := range list {
			items[i] = scalarString(x)
		}
		return sv.Replace(items)
	}
	if _, ok := v.(map[string]any); ok {
		return fmt.Errorf("a mapping, but the key takes %s", typeWords(f))
	}
	s := scalarString(v)
	if isList {
		var items []string
		for _, x := range strings.Split(s, ",") {
			if x = strings.TrimSpace(x); x != "" {
				items = append(items, x)
			}
		}
		return sv.Replace(items)
	}
	if err := f.Value.Set(s); err != nil {
		return fmt.Errorf("%q is not %s", s, typeWords(f))
	}
	f.Changed = true
	return nil
}

func scalarString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	return fmt.Sprint(v)
}

// typeWords describes what a flag takes, for error messages.
func typeWords(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "int", "int32", "int64":
		return "a whole number"
	case "uint", "uint64":
		return "a whole number ≥ 0"
	case "float64", "float32":
		return "a number"
	case "bool":
		return "true or false"
	case "duration":
		return "a duration such as 90s, 5m or 24h"
	case "stringSlice":
		return "a list of strings"
	case "bytes":
		return "a size such as 2GiB or 1536MiB"
	}
	return "a string"
}

// printConfig writes the values of fs as a YAML configuration file that
// --config accepts back, each value commented with its source.
func printConfig(w io.Writer, fs *pflag.FlagSet, source map[string]string) error {
	root := &yamlv3.Node{Kind: yamlv3.MappingNode}
	child := func(m *yamlv3.Node, key string) *yamlv3.Node {
		for i := 0; i < len(m.Content); i += 2 {
			if m.Content[i].Value == key {
				return m.Content[i+1]
			}
		}
		n := &yamlv3.Node{Kind: yamlv3.MappingNode}
		m.Content = append(m.Content, &yamlv3.Node{Kind: yamlv3.ScalarNode, Value: key}, n)
		return n
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if notConfigFlag(f.Name) {
			return
		}
		path := strings.Split(configKey(f.Name), ".")
		m := root
		for _, p := range path[:len(path)-1] {
			m = child(m, p)
		}
		src := source[f.Name]
		if src == "" {
			src = "default"
		}
		val := &yamlv3.Node{Kind: yamlv3.ScalarNode, Value: f.Value.String(), LineComment: src}
		switch f.Value.Type() {
		case "int", "int32", "int64", "uint", "uint64":
			val.Tag = "!!int"
		case "float64", "float32":
			val.Tag = "!!float"
		case "bool":
			val.Tag = "!!bool"
		case "stringSlice":
			items, _ := fs.GetStringSlice(f.Name)
			val = &yamlv3.Node{Kind: yamlv3.SequenceNode, Style: yamlv3.FlowStyle, LineComment: src}
			for _, it := range items {
				val.Content = append(val.Content, &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!str", Value: it})
			}
		default:
			val.Tag = "!!str"
		}
		m.Content = append(m.Content, &yamlv3.Node{Kind: yamlv3.ScalarNode, Value: path[len(path)-1]}, val)
	})
	enc := yamlv3.NewEncoder(w)
	enc.SetIndent(2)
	doc := &yamlv3.Node{Kind: yamlv3.DocumentNode, HeadComment: "recsys serve configuration: defaults < --config file < RECSYS_* environment < flags.\nEach value's source is in the comment; this output is accepted back by --config.", Content: []*yamlv3.Node{root}}
	if err := enc.Encode(doc); err != nil {
		return err
	}
	return enc.Close()
}
