package deliveryapi

import (
	"context"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

var columns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "<webhook-id>.<endpoint>"},
	{Name: "Endpoint", Type: "string", Description: "The WebhookEndpoint delivered to."},
	{Name: "Type", Type: "string", Description: "The CloudEvent type."},
	{Name: "Phase", Type: "string", Description: "Pending, Retrying, Succeeded or DeadLettered."},
	{Name: "Attempts", Type: "integer", Description: "Attempts since the delivery was last queued."},
	{Name: "Last Status", Type: "string", Description: "The last attempt's HTTP status or failure reason."},
	{Name: "Age", Type: "string", Description: "Time since the event was accepted."},
}

// ConvertToTable renders deliveries as `kubectl get` shows them.
func (s *storage) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	table := &metav1.Table{ColumnDefinitions: columns}
	switch o := obj.(type) {
	case *deliveryv1.Delivery:
		table.Rows = []metav1.TableRow{row(o, time.Now())}
	case *deliveryv1.DeliveryList:
		now := time.Now()
		table.Rows = make([]metav1.TableRow, 0, len(o.Items))
		for i := range o.Items {
			table.Rows = append(table.Rows, row(&o.Items[i], now))
		}
	default:
		return nil, apierrors.NewInternalError(nil)
	}
	if lm, err := meta.ListAccessor(obj); err == nil {
		table.ResourceVersion = lm.GetResourceVersion()
	} else if om, err := meta.Accessor(obj); err == nil {
		table.ResourceVersion = om.GetResourceVersion()
	}
	return table, nil
}

func row(d *deliveryv1.Delivery, now time.Time) metav1.TableRow {
	return metav1.TableRow{
		Cells: []any{
			d.Name, d.Spec.EndpointRef.Name, d.Spec.Event.Type, string(d.Status.Phase),
			int64(d.Status.AttemptCount), lastStatus(d), duration.HumanDuration(now.Sub(d.CreationTimestamp.Time)),
		},
		Object: runtime.RawExtension{Object: d},
	}
}

// lastStatus is the last attempt's status code, or its failure reason
// when no answer came; empty before the first attempt.
func lastStatus(d *deliveryv1.Delivery) string {
	if len(d.Status.Attempts) == 0 {
		return ""
	}
	a := d.Status.Attempts[len(d.Status.Attempts)-1]
	if a.StatusCode != 0 {
		return strconv.Itoa(int(a.StatusCode))
	}
	return a.Error
}
