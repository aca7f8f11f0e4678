/*
Copyright 2026 The Herald Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package controllers

import (
	"flag"
	"io"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// parseDispatcherFlags binds a fresh configuration to a flag set and parses
// args, as the manager does at start-up.
func parseDispatcherFlags(t *testing.T, args ...string) (DispatcherConfig, error) {
	t.Helper()
	var cfg DispatcherConfig
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.BindFlags(fs)
	return cfg, fs.Parse(args)
}

func TestDispatcherSchedulingFlags(t *testing.T) {
	cfg, err := parseDispatcherFlags(t,
		`--dispatcher-node-selector={"kubernetes.io/os":"linux","pool":"webhooks"}`,
		`--dispatcher-tolerations=[{"key":"dedicated","operator":"Equal","value":"webhooks","effect":"NoSchedule"}]`,
		`--dispatcher-affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]}]}}}`,
		"--dispatcher-priority-class-name=webhooks-high",
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid scheduling flags refused: %v", err)
	}
	spec := DispatcherDeployment(cfg).Spec.Template.Spec
	if spec.NodeSelector["pool"] != "webhooks" || spec.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector = %v", spec.NodeSelector)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "dedicated" ||
		spec.Tolerations[0].Effect != corev1.TaintEffectNoSchedule || spec.Tolerations[0].Value != "webhooks" {
		t.Errorf("tolerations = %+v", spec.Tolerations)
	}
	if spec.Affinity == nil || spec.Affinity.NodeAffinity == nil ||
		spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Key != "zone" {
		t.Errorf("affinity = %+v", spec.Affinity)
	}
	if spec.PriorityClassName != "webhooks-high" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}

	// Unset, they leave the pod spec as before; set, they roll the pods.
	defaults := DispatcherDeployment(DefaultDispatcherConfig()).Spec.Template
	if defaults.Spec.NodeSelector != nil || defaults.Spec.Tolerations != nil || defaults.Spec.Affinity != nil ||
		defaults.Spec.PriorityClassName != "" {
		t.Errorf("defaults must not schedule: %+v", defaults.Spec)
	}
	if cfg.Hash() == DefaultDispatcherConfig().Hash() {
		t.Error("scheduling changes must change the config hash (and roll the dispatcher)")
	}
	empty, err := parseDispatcherFlags(t, "--dispatcher-node-selector=", "--dispatcher-tolerations=[]")
	if err != nil {
		t.Fatal(err)
	}
	if empty.Hash() != DefaultDispatcherConfig().Hash() {
		t.Error("empty scheduling flags must hash like unset ones")
	}
}

func TestDispatcherSchedulingFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		arg      string
		wantFlag string // in the parse or validation error
	}{
		{"node selector not JSON", "--dispatcher-node-selector=pool=webhooks", "dispatcher-node-selector"},
		{"misspelt toleration field", `--dispatcher-tolerations=[{"kee":"dedicated"}]`, "dispatcher-tolerations"},
		{"bad node selector key", `--dispatcher-node-selector={"bad key":"x"}`, "--dispatcher-node-selector"},
		{"exists with value", `--dispatcher-tolerations=[{"key":"k","operator":"Exists","value":"v"}]`, "--dispatcher-tolerations"},
		{"bad priority class", "--dispatcher-priority-class-name=High Priority", "--dispatcher-priority-class-name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseDispatcherFlags(t, tc.arg)
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantFlag) {
				t.Errorf("want an error naming %s, got %v", tc.wantFlag, err)
			}
		})
	}
}
