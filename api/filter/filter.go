// Package filter defines the CEL language of Subscription filters
// (spec.filter). It is part of the API contract: the manager compiles
// filters with it to report errors in the Subscription's Ready condition, and
// the dispatcher evaluates them with it, so both always agree on what a
// filter means.
package filter

import (
	"errors"
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/ext"
)

// CostLimit bounds the work one evaluation may do, so a filter cannot stall
// the dispatcher whatever event it sees.
const CostLimit = 100_000

// Variables a filter can read.
const (
	// EventVar is a map of the event's attributes as strings: id, type,
	// source, specversion, subject, time, datacontenttype, dataschema and
	// every extension. Absent optional attributes are empty strings.
	EventVar = "event"
	// DataVar is the event data decoded from JSON (null when the data is
	// absent or not JSON).
	DataVar = "data"
)

var env = mustEnv()

func mustEnv() *cel.Env {
	e, err := cel.NewEnv(
		cel.Variable(EventVar, cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable(DataVar, cel.DynType),
		ext.Strings(),
		ext.Encoders(),
		ext.Math(),
		ext.Lists(),
		ext.Sets(),
	)
	if err != nil {
		panic(fmt.Sprintf("build CEL environment: %v", err))
	}
	return e
}

// Filter is a compiled filter, safe for concurrent use.
type Filter struct {
	expr    string
	program cel.Program
}

// Compile parses and type-checks expr. The error message is meant for a
// condition message: it says what is wrong and where.
func Compile(expr string) (*Filter, error) {
	ast, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("filter does not compile: %s", strings.TrimSpace(iss.Err().Error()))
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return nil, fmt.Errorf("filter must evaluate to a bool, not %s", t)
	}
	prg, err := env.Program(ast, cel.CostLimit(CostLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("filter cannot be planned: %w", err)
	}
	return &Filter{expr: expr, program: prg}, nil
}

// String returns the source expression.
func (f *Filter) String() string { return f.expr }

// ErrNotBool is returned when a filter over dynamic data yields a non-bool.
var ErrNotBool = errors.New("filter did not evaluate to a bool")

// Match evaluates the filter. attributes are the event's attributes as
// strings (see EventVar); data is the decoded JSON data or nil. An
// evaluation error (a missing field in data, a cost overrun) is returned so
// the caller can count it; callers treat it as no match.
func (f *Filter) Match(attributes map[string]string, data any) (bool, error) {
	out, _, err := f.program.Eval(map[string]any{EventVar: attributes, DataVar: data})
	if err != nil {
		return false, fmt.Errorf("evaluate filter: %w", err)
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, ErrNotBool
	}
	return b, nil
}
