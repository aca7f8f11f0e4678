package controllers

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func TestDispatcherObjectsCreatedAndDriftRepaired(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := testDispCfg.Namespace
	key := client.ObjectKey{Namespace: ns, Name: heraldv1.DispatcherName}

	// Everything exists after the start-up reconcile, with no trigger.
	g.Eventually(func(g Gomega) {
		g.Expect(k8sClient.Get(ctx, key, &appsv1.Deployment{})).To(Succeed())
		g.Expect(k8sClient.Get(ctx, key, &corev1.Service{})).To(Succeed())
		g.Expect(k8sClient.Get(ctx, key, &corev1.ServiceAccount{})).To(Succeed())
		g.Expect(k8sClient.Get(ctx, key, &corev1.PersistentVolumeClaim{})).To(Succeed())
	}, waitTimeout, pollEvery).Should(Succeed())

	dep := &appsv1.Deployment{}
	g.Expect(k8sClient.Get(ctx, key, dep)).To(Succeed())
	want := DispatcherDeployment(testDispCfg)
	g.Expect(dep.Spec.Template.Annotations).To(Equal(want.Spec.Template.Annotations))
	g.Expect(dep.Spec.Replicas).To(Equal(ptr.To[int32](1)))
	g.Expect(dep.Spec.Template.Spec.Containers[0].Image).To(Equal(testDispCfg.Image))

	// Manual drift on the Deployment is put back.
	patch := client.MergeFrom(dep.DeepCopy())
	dep.Spec.Replicas = ptr.To[int32](5)
	dep.Spec.Template.Spec.Containers[0].Image = "example.com/evil:latest"
	g.Expect(k8sClient.Patch(ctx, dep, patch)).To(Succeed())
	g.Eventually(func(g Gomega) {
		cur := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(ctx, key, cur)).To(Succeed())
		g.Expect(cur.Spec.Replicas).To(Equal(ptr.To[int32](1)))
		g.Expect(cur.Spec.Template.Spec.Containers[0].Image).To(Equal(testDispCfg.Image))
	}, waitTimeout, pollEvery).Should(Succeed())

	// A deleted Service comes back.
	svc := &corev1.Service{}
	g.Expect(k8sClient.Get(ctx, key, svc)).To(Succeed())
	oldUID := svc.UID
	g.Expect(k8sClient.Delete(ctx, svc)).To(Succeed())
	g.Eventually(func(g Gomega) {
		cur := &corev1.Service{}
		g.Expect(k8sClient.Get(ctx, key, cur)).To(Succeed())
		g.Expect(cur.UID).NotTo(Equal(oldUID))
	}, waitTimeout, pollEvery).Should(Succeed())
}
