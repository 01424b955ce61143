"""bgl.study"""
