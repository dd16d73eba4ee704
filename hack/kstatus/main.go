// Command kstatus reads Kubernetes objects as JSON on stdin (one object, a List, or a stream of
// either) and prints one JSON line per object with the status that
// sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute gives it: the same library Flux, Helm 4
// (`--wait=watcher`) and kpt use to decide whether an object is Current, InProgress or Failed.
//
// Output lines look like:
//
//	{"kind":"MachineIdentity","namespace":"ns","name":"app","status":"Current","message":"Resource is Ready"}
//
// The exit code is 0 when every object was computed, 1 on a read or compute error.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < objects.json  (an object, a List, or a stream of them)")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(in)
	dec.UseNumber()
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	for {
		var raw map[string]interface{}
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("decoding JSON: %w", err)
		}
		objs, err := flatten(raw)
		if err != nil {
			return err
		}
		for _, u := range objs {
			res, err := status.Compute(u)
			if err != nil {
				return fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
			}
			if err := enc.Encode(result{
				Kind:      u.GetKind(),
				Namespace: u.GetNamespace(),
				Name:      u.GetName(),
				Status:    res.Status.String(),
				Message:   res.Message,
			}); err != nil {
				return err
			}
		}
	}
}

// flatten turns a decoded object into the objects to compute: the items of a List (kubectl's
// `get -o json` of several objects), or the object itself.
func flatten(raw map[string]interface{}) ([]*unstructured.Unstructured, error) {
	normalized, err := normalize(raw)
	if err != nil {
		return nil, err
	}
	obj := normalized.(map[string]interface{})
	kind, _ := obj["kind"].(string)
	if items, ok := obj["items"].([]interface{}); ok && (kind == "" || strings.HasSuffix(kind, "List")) {
		var objs []*unstructured.Unstructured
		for i, item := range items {
			m, ok := item.(map[string]interface{})
			if !ok {
				return nil, fmt.Errorf("items[%d] is not an object", i)
			}
			nested, err := flatten(m)
			if err != nil {
				return nil, err
			}
			objs = append(objs, nested...)
		}
		return objs, nil
	}
	return []*unstructured.Unstructured{{Object: obj}}, nil
}

// normalize converts json.Number into int64 or float64, the types unstructured accessors (and
// so kstatus's observedGeneration checks) expect.
func normalize(v interface{}) (interface{}, error) {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, val := range t {
			n, err := normalize(val)
			if err != nil {
				return nil, err
			}
			t[k] = n
		}
		return t, nil
	case []interface{}:
		for i, val := range t {
			n, err := normalize(val)
			if err != nil {
				return nil, err
			}
			t[i] = n
		}
		return t, nil
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i, nil
		}
		f, err := t.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %q: %w", t, err)
		}
		return f, nil
	default:
		return v, nil
	}
}
