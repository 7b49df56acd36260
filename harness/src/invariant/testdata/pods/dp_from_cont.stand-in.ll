target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpf"
define dso_local i32 @dp_from_cont(i8* %ctx) #0 section "tc" {
  ret i32 -1
}
@_license = dso_local global [4 x i8] c"GPL\00", section "license", align 1
@llvm.used = appending global [2 x i8*] [i8* bitcast (i32 (i8*)* @dp_from_cont to i8*), i8* getelementptr inbounds ([4 x i8], [4 x i8]* @_license, i32 0, i32 0)], section "llvm.metadata"
attributes #0 = { nounwind }
