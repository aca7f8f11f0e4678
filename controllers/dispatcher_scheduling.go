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
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// DispatcherScheduling places the dispatcher's pods: the pod-spec fields a
// platform team sets on every workload (Helm charts expose them as
// nodeSelector, tolerations, affinity and priorityClassName). The manager
// renders the dispatcher, so they are manager flags; the structured ones
// take JSON, the form `helm template` and kustomize patches produce.
type DispatcherScheduling struct {
	NodeSelector      map[string]string   `json:"nodeSelector,omitempty"`
	Tolerations       []corev1.Toleration `json:"tolerations,omitempty"`
	Affinity          *corev1.Affinity    `json:"affinity,omitempty"`
	PriorityClassName string              `json:"priorityClassName,omitempty"`
}

func (s *DispatcherScheduling) bindFlags(fs *flag.FlagSet) {
	fs.Var(jsonFlag{&s.NodeSelector}, "dispatcher-node-selector",
		`nodeSelector of the dispatcher pods, as a JSON object (for example {"kubernetes.io/os":"linux"}).`)
	fs.Var(jsonFlag{&s.Tolerations}, "dispatcher-tolerations",
		`Tolerations of the dispatcher pods, as a JSON array of Kubernetes tolerations.`)
	fs.Var(jsonFlag{&s.Affinity}, "dispatcher-affinity",
		`Affinity of the dispatcher pods, as a JSON Kubernetes affinity object.`)
	fs.StringVar(&s.PriorityClassName, "dispatcher-priority-class-name", "",
		"PriorityClass of the dispatcher pods. Empty for none.")
}

func (s DispatcherScheduling) validate(errs *flagErrors) {
	for key, value := range s.NodeSelector {
		if msgs := validation.IsQualifiedName(key); len(msgs) > 0 {
			errs.add("dispatcher-node-selector", "key %q is not a label key: %s", key, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(value); len(msgs) > 0 {
			errs.add("dispatcher-node-selector", "value %q of %q is not a label value: %s", value, key, strings.Join(msgs, "; "))
		}
	}
	for i, toleration := range s.Tolerations {
		if toleration.Operator == corev1.TolerationOpExists && toleration.Value != "" {
			errs.add("dispatcher-tolerations", "toleration %d: operator Exists takes no value", i)
		}
	}
	if s.PriorityClassName != "" {
		if msgs := validation.IsDNS1123Subdomain(s.PriorityClassName); len(msgs) > 0 {
			errs.add("dispatcher-priority-class-name", "%q is not a valid PriorityClass name: %s",
				s.PriorityClassName, strings.Join(msgs, "; "))
		}
	}
}

// apply sets the scheduling fields on the dispatcher's pod spec.
func (s DispatcherScheduling) apply(spec *corev1.PodSpec) {
	if len(s.NodeSelector) > 0 {
		spec.NodeSelector = s.NodeSelector
	}
	if len(s.Tolerations) > 0 {
		spec.Tolerations = s.Tolerations
	}
	spec.Affinity = s.Affinity
	spec.PriorityClassName = s.PriorityClassName
}

// jsonFlag is a flag.Value decoding JSON into target (a pointer). Unknown
// fields are errors, so a misspelt key fails at start-up instead of being
// ignored; an empty value resets the target to its zero value.
type jsonFlag struct{ target any }

func (f jsonFlag) String() string {
	if f.target == nil {
		return ""
	}
	b, err := json.Marshal(f.target)
	if err != nil || string(b) == "null" || string(b) == "{}" || string(b) == "[]" {
		return ""
	}
	return string(b)
}

func (f jsonFlag) Set(value string) error {
	if strings.TrimSpace(value) == "" {
		value = "null"
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(value)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(f.target); err != nil {
		return fmt.Errorf("not valid JSON for this flag: %w", err)
	}
	return nil
}
